//! What can go wrong with a ticket command, as the front ends need to tell it apart.

use crate::domain::model::Ticket;
use crate::domain::status::IllegalTransition;
use crate::domain::validation::ValidationError;
use crate::ports::store::StoreError;

/// The outcome of a failed ticket command; each front end maps it to its own status codes.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum TicketError {
    #[error("ticket {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// Create with an id that exists with different content; carries the stored ticket.
    #[error("ticket {} already exists with different content", .0.ticket_id)]
    AlreadyExists(Box<Ticket>),
    /// The stored version is not the one the client expected (If-Match).
    #[error("ticket {ticket_id} is at version {actual}, not {expected}")]
    VersionMismatch { ticket_id: String, expected: i64, actual: i64 },
    /// A bounded mailbox is full: shed load instead of queueing without limit.
    #[error("the service is overloaded; retry later")]
    Overloaded,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ticket's actor failed while handling the request; it was restarted from the stored state.
    #[error("internal error while handling ticket {0}; the ticket was reloaded from the store")]
    ActorFailed(String),
    /// Cluster mode: no replica could be found serving the ticket's shard in time (a hand-off or failover
    /// outlasted the router's wait). Retryable: 503 / UNAVAILABLE.
    #[error("no replica serves this ticket right now ({0}); retry")]
    NotOwner(String),
}
