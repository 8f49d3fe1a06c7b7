//! The execution ticket: every field of `execution-ticket.avsc`, plus the server's `version` and `updated_at`.
//!
//! A ticket is split in two: [`TicketSpec`], what the orchestrator asked for and what never changes, and the
//! lifecycle fields that only the status machine ([`crate::domain::status`]) moves. Idempotent create compares specs.
//! All timestamps are integer epoch milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::enums::{
    Consistency, DeliveryMode, Durability, Priority, RiskBand, SecurityLevel, TaskType, TicketStatus,
};

/// Epoch milliseconds.
pub type Millis = i64;

/// Service-level agreement of one ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sla {
    /// Absolute deadline, epoch ms.
    pub deadline: Millis,
    /// Per-attempt timeout in ms (> 0).
    pub timeout_ms: i64,
    /// Automatic retries allowed (≥ 0).
    pub max_retries: i32,
}

/// Quality of service asked for by the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Qos {
    pub delivery_mode: DeliveryMode,
    pub consistency: Consistency,
    pub durability: Durability,
}

/// The immutable part of a ticket: what was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TicketSpec {
    pub plan_id: String,
    pub intent_id: String,
    pub decision_id: String,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub task_id: String,
    pub task_type: TaskType,
    pub description: String,
    /// Ticket ids that must complete first.
    pub dependencies: Vec<String>,
    pub priority: Priority,
    pub risk_band: RiskBand,
    pub sla: Sla,
    pub qos: Qos,
    /// Task parameters (a JSON object).
    #[schema(value_type = Object)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub required_capabilities: Vec<String>,
    pub security_level: SecurityLevel,
    pub estimated_duration_ms: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    pub schema_version: i32,
}

/// A whole ticket as stored and as answered by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ticket {
    pub ticket_id: String,
    #[serde(flatten)]
    pub spec: TicketSpec,
    pub status: TicketStatus,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub actual_duration_ms: Option<i64>,
    pub retry_count: i32,
    pub error_message: Option<String>,
    pub compensation_ticket_id: Option<String>,
    /// Optimistic-concurrency version: 1 at creation, +1 on every change.
    pub version: i64,
    /// Last change, epoch ms.
    pub updated_at: Millis,
    /// What the SLA engine has fired for this ticket, and its next SLA instant.
    #[serde(default)]
    pub sla_state: SlaState,
}

impl Ticket {
    /// Whether `other` is the same create request as the one that made `self` (idempotent create).
    /// Lifecycle fields are not compared, so a redelivered create still matches after the ticket moved on;
    /// `created_at` counts only when the client set it.
    pub fn same_request(&self, other: &Ticket, other_set_created_at: bool) -> bool {
        self.ticket_id == other.ticket_id
            && self.spec == other.spec
            && (!other_set_created_at || self.created_at == other.created_at)
    }
}

/// What the SLA engine has done for a ticket; stored with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct SlaState {
    /// Warning points already announced (or already past when the ticket arrived), in permille.
    pub warnings_fired: Vec<u32>,
    /// When the deadline breach was announced.
    pub breached_at: Option<Millis>,
    /// Start of the PENDING spell whose start-overdue alert fired.
    pub start_overdue_for: Option<Millis>,
    /// `started_at` of the attempt that timed out.
    pub timed_out_attempt: Option<Millis>,
    /// Start of the current PENDING spell.
    pub pending_since: Option<Millis>,
    /// The next SLA instant of this ticket (indexed in the store so passivated tickets need no actor).
    pub next_due_at: Option<Millis>,
    /// The PENDING spell (its `pending_since`) for which `ticket.ready` or `ticket.blocked` was announced.
    pub ready_for: Option<Millis>,
}
