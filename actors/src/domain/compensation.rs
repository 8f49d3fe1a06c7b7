//! Building the COMPENSATE ticket that undoes another ticket.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::enums::{TaskType, TicketStatus};
use crate::domain::model::{Millis, Sla, Ticket, TicketSpec};
use crate::domain::validation::{self, ValidationError, MAX_TIMESTAMP};

/// Metadata key, on the compensation ticket, that points back at the ticket it compensates.
pub const ORIGINAL_TICKET_KEY: &str = "original_ticket_id";

/// POST /api/v1/tickets/compensation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompensationRequest {
    pub original_ticket_id: String,
    pub reason: String,
    /// What the compensating worker should do; default `rollback`.
    pub compensation_action: Option<String>,
    /// Parameters for the compensation ticket; default: the original's.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Longest accepted compensation reason, in bytes (it becomes part of the ticket's description and metadata).
pub const MAX_REASON_LEN: usize = 4_096;

impl CompensationRequest {
    pub fn action(&self) -> &str {
        self.compensation_action.as_deref().unwrap_or("rollback")
    }

    /// The same rules as a create's, for what this request adds to the compensation ticket.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.reason.trim().is_empty() {
            return Err(ValidationError::new("reason", "must not be empty"));
        }
        validation::text(&self.reason, "reason", MAX_REASON_LEN)?;
        if let Some(action) = &self.compensation_action {
            validation::text(action, "compensation_action", validation::MAX_ID_LEN)?;
        }
        if let Some(p) = &self.parameters {
            validation::json_object(p, "parameters", validation::MAX_PARAMETERS_BYTES)?;
        }
        Ok(())
    }
}

/// The compensation ticket for `original`: same plan, intent, decision, trace and security; task type
/// COMPENSATE; linked back through metadata `original_ticket_id`. Its deadline is the original's, or one
/// full retry budget from now if that has already passed, capped at [`MAX_TIMESTAMP`] (a huge timeout times a
/// huge retry budget must not give a deadline no store can hold, or one the SLA arithmetic overflows on).
pub fn compensation_ticket(original: &Ticket, req: &CompensationRequest, ticket_id: String, now: Millis) -> Ticket {
    let o = &original.spec;
    let budget = o.sla.timeout_ms.saturating_mul(i64::from(o.sla.max_retries) + 1);
    let mut metadata = o.metadata.clone();
    metadata.insert(ORIGINAL_TICKET_KEY, original.ticket_id.clone());
    metadata.insert("compensation_reason", req.reason.clone());
    metadata.insert("compensation_action", req.action().to_owned());
    Ticket {
        ticket_id,
        spec: TicketSpec {
            task_id: format!("{}:compensate", o.task_id),
            task_type: TaskType::Compensate,
            description: format!("Compensate ticket {} ({}): {}", original.ticket_id, req.action(), req.reason),
            dependencies: Vec::new(),
            sla: Sla { deadline: o.sla.deadline.max(now.saturating_add(budget).min(MAX_TIMESTAMP)), ..o.sla.clone() },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::{tests::sample_json, NewTicket};

    #[test]
    fn the_deadline_of_a_huge_retry_budget_is_capped_at_the_latest_timestamp() {
        let mut v = sample_json();
        v["sla"]["deadline"] = 1_000.into();
        v["sla"]["timeout_ms"] = i64::MAX.into();
        v["sla"]["max_retries"] = i32::MAX.into();
        let original = serde_json::from_value::<NewTicket>(v).unwrap().validate(1_000, String::new).unwrap().ticket;
        let req = CompensationRequest {
            original_ticket_id: original.ticket_id.clone(),
            reason: "undo".into(),
            compensation_action: None,
            parameters: None,
        };
        let comp = compensation_ticket(&original, &req, "c-1".into(), 5_000);
        assert_eq!(comp.spec.sla.deadline, MAX_TIMESTAMP);
        let mut ok = sample_json();
        ok["sla"]["timeout_ms"] = 1_000.into();
        ok["sla"]["max_retries"] = 1.into();
        let original = serde_json::from_value::<NewTicket>(ok).unwrap().validate(1_000, String::new).unwrap().ticket;
        let comp = compensation_ticket(&original, &req, "c-2".into(), 5_000);
        assert_eq!(comp.spec.sla.deadline, original.spec.sla.deadline, "an ordinary deadline is kept");
    }
}
