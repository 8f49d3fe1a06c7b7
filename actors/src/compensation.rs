//! Building the COMPENSATE ticket that undoes another ticket.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::enums::{TaskType, TicketStatus};
use crate::model::{Millis, Sla, Ticket, TicketSpec};

/// Metadata key, on the compensation ticket, that points back at the ticket it compensates.
pub const ORIGINAL_TICKET_KEY: &str = "original_ticket_id";

/// POST /api/v1/tickets/compensation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompensationRequest {
    pub original_ticket_id: String,
    pub reason: String,
    /// What the compensating worker should do; default `rollback`.
    pub compensation_action: Option<String>,
    /// Parameters for the compensation ticket; default: the original's.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CompensationRequest {
    pub fn action(&self) -> &str {
        self.compensation_action.as_deref().unwrap_or("rollback")
    }
}

/// The compensation ticket for `original`: same plan, intent, decision, trace and security; task type
/// COMPENSATE; linked back through metadata `original_ticket_id`. Its deadline is the original's, or one
/// full retry budget from now if that has already passed.
pub fn compensation_ticket(original: &Ticket, req: &CompensationRequest, ticket_id: String, now: Millis) -> Ticket {
    let o = &original.spec;
    let budget = o.sla.timeout_ms.saturating_mul(i64::from(o.sla.max_retries) + 1);
    let mut metadata = o.metadata.clone();
    metadata.insert(ORIGINAL_TICKET_KEY.into(), original.ticket_id.clone());
    metadata.insert("compensation_reason".into(), req.reason.clone());
    metadata.insert("compensation_action".into(), req.action().to_owned());
    Ticket {
        ticket_id,
        spec: TicketSpec {
            task_id: format!("{}:compensate", o.task_id),
            task_type: TaskType::Compensate,
            description: format!("Compensate ticket {} ({}): {}", original.ticket_id, req.action(), req.reason),
            dependencies: Vec::new(),
            sla: Sla { deadline: o.sla.deadline.max(now.saturating_add(budget)), ..o.sla.clone() },
            parameters: req.parameters.clone().unwrap_or_else(|| o.parameters.clone()),
            metadata,
            ..o.clone()
        },
        status: TicketStatus::Pending,
        created_at: now,
        started_at: None,
        completed_at: None,
        actual_duration_ms: None,
        retry_count: 0,
        error_message: None,
        compensation_ticket_id: None,
        version: 1,
        updated_at: now,
        sla_state: Default::default(),
    }
}
