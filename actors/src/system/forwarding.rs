//! A ticket request in a form that travels between replicas (cluster mode), and its typed answer.
//!
//! The router builds a [`Call`] for every request of a ticket. When the ticket's shard is local the call
//! becomes a [`Request`] with its reply channel ([`Reply::request`]); when another replica owns the shard the
//! call is encoded (JSON) and forwarded through the [`Forwarder`](crate::ports::forward::Forwarder) port, and the
//! owner's router runs it locally ([`Router::serve_forwarded`](crate::system::router::Router::serve_forwarded))
//! and sends back the encoded `Result<T, TicketError>`. Each reply type names the calls that answer with it, so
//! a call can only be answered with its own type, on either path.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::compensation::CompensationRequest;
use crate::domain::model::Ticket;
use crate::domain::status::Command;
use crate::domain::validation::ValidTicket;
use crate::system::error::TicketError;
use crate::system::ticket_actor::{Compensated, Created, ReplyTo, Request};

/// Every request the router sends to a ticket, as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
// A create carries its ticket: boxing it would only add an allocation (as `Request`).
#[allow(clippy::large_enum_variant)]
pub enum Call {
    Ticket(TicketCall),
    Create(CreateCall),
    Compensate(CompensationRequest),
}

/// The requests answered with the ticket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TicketCall {
    Get,
    Apply { cmd: Command, expected_version: Option<i64>, details: Option<serde_json::Value> },
    Heartbeat,
    Progress { progress: f64, message: Option<String> },
    CheckReady,
}

/// A validated create (the receiving replica validated it and chose its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateCall {
    pub ticket: Ticket,
    pub created_at_given: bool,
}

/// A reply type and the calls it answers.
pub trait Reply: Serialize + DeserializeOwned + Send + 'static {
    type Call: Clone + Send + 'static;
    /// The local request for `call`, answered on `reply`.
    fn request(call: Self::Call, reply: ReplyTo<Self>) -> Request;
    /// The call as it travels.
    fn wrap(call: Self::Call) -> Call;
}

impl Reply for Ticket {
    type Call = TicketCall;
    fn request(call: TicketCall, reply: ReplyTo<Ticket>) -> Request {
        match call {
            TicketCall::Get => Request::Get(reply),
            TicketCall::Apply { cmd, expected_version, details } => {
                Request::Apply { cmd, expected_version, details, reply }
            }
            TicketCall::Heartbeat => Request::Heartbeat(reply),
            TicketCall::Progress { progress, message } => Request::Progress { progress, message, reply },
            TicketCall::CheckReady => Request::CheckReady(reply),
        }
    }
    fn wrap(call: TicketCall) -> Call {
        Call::Ticket(call)
    }
}

impl Reply for Created {
    type Call = CreateCall;
    fn request(call: CreateCall, reply: ReplyTo<Created>) -> Request {
        Request::Create(ValidTicket { ticket: call.ticket, created_at_given: call.created_at_given }, reply)
    }
    fn wrap(call: CreateCall) -> Call {
        Call::Create(call)
    }
}

impl Reply for Compensated {
    type Call = CompensationRequest;
    fn request(call: CompensationRequest, reply: ReplyTo<Compensated>) -> Request {
        Request::Compensate(call, reply)
    }
    fn wrap(call: CompensationRequest) -> Call {
        Call::Compensate(call)
    }
}

/// Encode an answer for the wire.
pub fn encode_answer<T: Serialize>(answer: &Result<T, TicketError>) -> Vec<u8> {
    serde_json::to_vec(answer).unwrap_or_else(|e| {
        let failed: Result<(), TicketError> =
            Err(TicketError::ActorFailed(format!("the answer could not be encoded: {e}")));
        serde_json::to_vec(&failed).unwrap_or_default()
    })
}

/// Decode an answer from the wire.
pub fn decode_answer<T: DeserializeOwned>(bytes: &[u8]) -> Result<Result<T, TicketError>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::NewTicket;

    /// A ticket crosses replicas unchanged: every field, JSON metadata included.
    #[test]
    fn a_ticket_and_its_errors_survive_the_trip() {
        let new: NewTicket = serde_json::from_value(serde_json::json!({
            "ticket_id": "t-1", "plan_id": "p", "intent_id": "", "decision_id": "d", "task_id": "task",
            "task_type": "deploy", "description": "d", "priority": "high", "risk_band": "medium",
            "sla": {"deadline": 2_000_000_000_000_i64, "timeout_ms": 5000, "max_retries": 2},
            "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
            "parameters": {"n": 1e3, "deep": {"a": [1, 2]}}, "metadata": {"k": "v", "n": 2},
            "dependencies": ["a", "b"], "required_capabilities": ["gpu"], "security_level": "INTERNAL",
        }))
        .unwrap();
        let valid = new.validate(1_000, || "unused".into()).unwrap();
        let call = Created::wrap(CreateCall { ticket: valid.ticket.clone(), created_at_given: false });
        let Call::Create(back) = serde_json::from_slice::<Call>(&serde_json::to_vec(&call).unwrap()).unwrap() else {
            panic!("not a create")
        };
        assert_eq!(back.ticket, valid.ticket);
        let answer: Result<Ticket, TicketError> = Ok(valid.ticket.clone());
        assert_eq!(decode_answer::<Ticket>(&encode_answer(&answer)).unwrap().unwrap(), valid.ticket);
        let refused: Result<Ticket, TicketError> =
            Err(TicketError::VersionMismatch { ticket_id: "t-1".into(), expected: 1, actual: 2 });
        let back = decode_answer::<Ticket>(&encode_answer(&refused)).unwrap();
        assert!(matches!(back, Err(TicketError::VersionMismatch { expected: 1, actual: 2, .. })));
    }
}
